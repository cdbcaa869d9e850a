# cython: language_level=3, boundscheck=False, wraparound=False
"""Floors for the memory benchmarks: the least a check written as a Cython
method call can cost. Built on first use by bench/conftest.py, never shipped.

* ``Noop.try_acquire(key)``: the call alone (argument passing, bool return).
* ``HashCas.try_acquire(key)``: what any keyed check must do - SipHash-1-3
  (guardian's own ``_siphash.h``) over the key's UTF-8, then one
  ``__atomic`` compare-and-swap on an int64 slot of a table laid out like
  guardian's (16-byte slots, 2**18 of them by default).

The ``*_cost`` methods take guardian's optional ``cost=1`` argument, which
moves Cython from METH_O to FASTCALL|KEYWORDS argument parsing; the
``*_clock`` method adds the CLOCK_MONOTONIC read that GCRA needs. They split
the gap between the floor and guardian into its parts.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL

cdef extern from "_siphash.h" nogil:
    uint64_t g_siphash13(uint64_t k0, uint64_t k1, const unsigned char *data, size_t n)

cdef extern from *:
    """
    #include <time.h>
    /* One load and one strong, sequentially consistent CAS: the same
     * builtins and orders as guardian's _atomic.h. */
    static inline int floor_cas(int64_t *p) {
        int64_t old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
        return __atomic_compare_exchange_n(p, &old, old + 1, 0,
                                           __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    }
    static inline int64_t floor_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    """
    bint floor_cas(int64_t *p) nogil
    int64_t floor_now() nogil


cdef class Noop:
    """A method that does nothing but return True."""

    def try_acquire(self, key):
        return True

    def try_acquire_cost(self, key, cost=1):
        return True


cdef class HashCas:
    """Hash the key, CAS one slot of a 16-byte-slot table.

    ``HashCas(slots, buffer=None)``: the table is private memory, or the
    given writable buffer (e.g. a MAP_SHARED mmap inherited across fork, so
    that bench/shm_scaling.py can measure the floor's own scaling)."""

    cdef int64_t *words
    cdef uint64_t mask
    cdef uint64_t k0, k1
    cdef Py_buffer view
    cdef bint has_view

    def __cinit__(self, uint64_t slots=1 << 18, buffer=None):
        self.has_view = False
        if slots == 0 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        if buffer is None:
            self.words = <int64_t *>calloc(2 * slots, sizeof(int64_t))
            if self.words == NULL:
                raise MemoryError()
        else:
            PyObject_GetBuffer(buffer, &self.view, PyBUF_WRITABLE | PyBUF_SIMPLE)
            self.has_view = True
            if <size_t>self.view.len < 2 * slots * sizeof(int64_t) or <size_t>self.view.buf % 64:
                raise ValueError("buffer too small or not 64-byte aligned")
            self.words = <int64_t *>self.view.buf
        self.mask = slots - 1
        self.k0 = 0x0706050403020100
        self.k1 = 0x0f0e0d0c0b0a0908

    def __dealloc__(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
        else:
            free(self.words)

    cdef inline int64_t *_slot(self, object key) except NULL:
        cdef Py_ssize_t n
        cdef const char *data = PyUnicode_AsUTF8AndSize(key, &n)
        cdef uint64_t h = g_siphash13(self.k0, self.k1, <const unsigned char *>data, <size_t>n)
        return &self.words[2 * (h & self.mask) + 1]  # the TAT word of a {fp, tat} slot

    def try_acquire(self, key):
        return floor_cas(self._slot(key))

    def try_acquire_cost(self, key, cost=1):
        return floor_cas(self._slot(key))

    def try_acquire_clock(self, key):
        cdef int64_t *p = self._slot(key)
        if floor_now() < 0:  # keeps the read; never true
            return False
        return floor_cas(p)

    def total(self):
        """Sum of all slots: the number of successful CASes (a sanity check)."""
        cdef uint64_t i, s = 0
        for i in range(self.mask + 1):
            s += self.words[2 * i + 1]
        return s
