"""The stages composed: export, import, build, runtime, reports and the CLI."""
