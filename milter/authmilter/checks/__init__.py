"""One module per check. Each is a pure function from frozen inputs and a DnsClient to a frozen result."""
