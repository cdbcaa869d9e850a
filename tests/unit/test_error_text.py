"""A Redis failure is logged in one short line (issue 10 item 3): redis-py's
Sentinel and Cluster errors carry the reprs of the clients they tried."""

from __future__ import annotations

import redis.exceptions as rex
from redis.sentinel import MasterNotFoundError

from guardian import BackendUnavailableError
from guardian.backends._redis_common import translate

SENTINEL_ERROR = (
    "No master found for 'mymaster' : {<redis.client.Redis(<redis.connection.ConnectionPool("
    "<redis.connection.Connection(host=127.0.0.1,port=26379,db=0,socket_timeout=0.25)>)>)>: "
    "ConnectionError('Error 111 connecting to 127.0.0.1:26379. Connection refused.'),\n"
    "<redis.client.Redis(<redis.connection.ConnectionPool(<redis.connection.Connection("
    "host=127.0.0.1,port=26380,db=0)>)>)>: TimeoutError('Timeout reading from socket')}"
)


def test_sentinel_and_cluster_errors_become_one_short_line() -> None:
    err = translate(MasterNotFoundError(SENTINEL_ERROR))
    text = str(err)
    assert isinstance(err, BackendUnavailableError)
    assert "\n" not in text and len(text) <= 240 and "ConnectionPool" not in text
    assert text.startswith("Redis is unreachable: No master found for 'mymaster' : {Redis: ConnectionError(")
    long = translate(rex.RedisClusterException("x" * 5000))
    assert isinstance(long, BackendUnavailableError) and len(str(long)) < 240 and str(long).endswith("...")
