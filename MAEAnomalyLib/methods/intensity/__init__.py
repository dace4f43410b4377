"""The non-learned baseline as a method: a slice's score is the 99.5th percentile of its normalised
intensity in the brain, its map the normalised intensity itself. Nothing is trained; ``train --method
intensity`` calibrates it on healthy volumes (position reference, slice and voxel thresholds)."""
