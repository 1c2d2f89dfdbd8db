"""The pure scheduling core: events in, actions out, time injected. No I/O, no clocks."""
