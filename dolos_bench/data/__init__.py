"""Data formats: the dataset schema, sources of real images, dataset folder I/O, Dolos layout."""
