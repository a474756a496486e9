"""Minimal image data sets built around a numpy array, for the preprocessing tests (the pixel
values are what the tests compute by hand)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_ds(arr: np.ndarray, pi: str | None = None, *, bits_stored: int | None = None, frames: int = 1, **tags):
    """A minimal uncompressed image dataset around ``arr`` ((frames,) rows, cols (, 3))."""
    arr = np.ascontiguousarray(arr)
    colour = arr.ndim == (4 if frames > 1 else 3)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    shape = arr.shape[1:] if frames > 1 else arr.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = pi or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    return ds
