"""Pure NSM rules: path update, tokens and expiry, refresh timing, IPAM, endpoint matching, env grammars.

Nothing here does I/O: no grpc, no pyroute2, no sockets, no clock reads (time is always an argument).
"""
