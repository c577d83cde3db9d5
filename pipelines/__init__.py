"""cellfeat's stages and command line: the only place with file I/O policy, caching,
progress bars, reports and talking to the user. The library (:mod:`cellfeat`) stays pure."""
