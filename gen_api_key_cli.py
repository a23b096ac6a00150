#!/usr/bin/env python3
"""Manage aigateway API keys with flags: see --help."""

from aigateway.cli.flags import main

if __name__ == "__main__":
    main()
