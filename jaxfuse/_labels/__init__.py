"""Training-time pseudo labels: fused segments to snippet labels through the published LP."""
