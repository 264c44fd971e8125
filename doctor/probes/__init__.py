"""Pure parsers of probe output (files under /proc, tool output), tested on captured fixtures."""
