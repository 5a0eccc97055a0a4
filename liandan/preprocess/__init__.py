"""Dataset preparation: image operations (resize, flip, split, crops) and captioners."""
