"""authmilter: inbound mail authentication (SPF, DKIM, DMARC, iprev) as a Postfix milter."""

__version__ = "0.1.0"
