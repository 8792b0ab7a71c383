"""Exit statuses of every `authmilter` command, in one place (sysexits.h where one fits; `check` also maps its
verdict to 0-3)."""

EX_OK = 0
EX_USAGE = 64       # a bad command line
EX_SOFTWARE = 70    # an internal error
EX_OSERR = 71       # cannot listen (socket in use, no permission)
EX_TEMPFAIL = 75    # try again later (`reports send`: a report waits for a retry, or the store is unreachable)
EX_CONFIG = 78      # a bad configuration file
