"""Steering arena: a local web page for live, side-by-side steered generation (`steerlens arena`)."""
