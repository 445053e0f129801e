"""export: a fitted run (or CLIP itself) as a folder that loads like an open_clip model, for prediction
on new images and for LAION's CLIP_benchmark."""
