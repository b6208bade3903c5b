"""Media: peers, relay and the synthetic stamped video used to measure them."""
