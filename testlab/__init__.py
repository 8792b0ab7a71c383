"""Helpers shared by the tests and the benchmarks, never installed: the milter-protocol client, the test DNS
server, the daemon runner, the in-process fake resolver and the Postfix + NSD + Unbound lab in a network
namespace. Neither tests/ nor bench/ imports the other; both import this."""
