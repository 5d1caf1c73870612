"""Building blocks shared by several chapters: attention (:mod:`lib.nn.attention`), positional encodings
(:mod:`lib.nn.positional`) and the time-conditioned UNet/MLP (:mod:`lib.nn.unet`)."""
