"""DMARC aggregate reports (RFC 9990): recording verdicts into a store, and building and sending the daily reports.

Shell code beside daemon.py: fed by an observer after the verdict, never imported by a check. `model` holds the
values shared by the recording side (record, writer, journal, store) and the sending side (xmlreport,
destinations, mail, send).
"""
