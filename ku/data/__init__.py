"""Data: readers (AVA, Photo.net, CSV), robust image I/O, the bundled demo set, Hosu's
augmentations, the HDF5 feature store and Keras/tf.data generators over it.

Sub-modules are imported on use to keep ``import ku.data`` light:
``ku.data.images``, ``ku.data.readers``, ``ku.data.demo``, ``ku.data.augment``,
``ku.data.store``, ``ku.data.generators``.
"""
