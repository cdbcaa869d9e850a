"""The Redis Lua scripts, shipped as package data (see _gcra.lua)."""
