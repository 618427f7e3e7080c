"""roomkit's sans-IO centre: what a connection and a room decide, with no I/O.

Nothing here imports trio: each module is synchronous, takes the time it needs as an
argument (``now``), and returns what to do instead of doing it, so that it can be
tested byte by byte without a socket (h11's and wsproto's design). The Trio layer
around it reads, writes, sleeps and schedules, and carries out what these decide.
"""
