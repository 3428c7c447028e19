#!/usr/bin/python3
"""Turns an HDF5 file into a recipe for fuzz_h5 (the format is in fuzz_h5.cpp's header).

Used by scripts/fuzz to seed the HDF5 fuzzer with real nfkit files. Datasets larger than
2^18 values keep their leading rows; datasets are written before attributes so that an
attribute never creates a group where a dataset belongs.

    /usr/bin/python3 fuzz/h5_recipe.py model.h5 corpus/h5/model.recipe
"""
import struct
import sys

import h5py
import numpy as np

TYPES = {np.dtype('<f4'): 0, np.dtype('<f8'): 1, np.dtype('<i8'): 2, np.dtype('u1'): 3,
         np.dtype('<i4'): 4, np.dtype('i1'): 5}


def str8(s):
    b = s.encode()[:255]
    return bytes([len(b)]) + b


def dataset(name, d):
    data = np.asarray(d[()])
    if data.dtype.kind in 'SUO':
        return None
    data = data.astype(data.dtype.newbyteorder('<'))
    code = TYPES.get(data.dtype)
    if code is None:
        data, code = data.astype('<f8'), 1
    while data.ndim and data.size > (1 << 18):
        data = data[: max(1, data.shape[0] // 2)]
    if data.ndim > 4 or any(n > 0xFFFF for n in data.shape):
        return None
    rec = b'\x00' + str8('/' + name) + bytes([code, data.ndim])
    rec += b''.join(struct.pack('<H', n) for n in data.shape)
    return rec + np.ascontiguousarray(data).tobytes()


def attribute(obj_name, name, value, h5type):
    rec = b'\x01' + str8(obj_name) + str8(name)
    if isinstance(value, (bytes, str)):
        if isinstance(value, str):
            value = value.encode()
        variable = h5py.check_string_dtype(h5type.dtype).length is None
        return rec + bytes([3 if variable else 0]) + struct.pack('<I', len(value)) + value
    arr = np.asarray(value)
    count = 0 if arr.ndim == 0 else arr.size
    if count > 4:
        return None
    kind = 1 if arr.dtype.kind in 'iub' else 2
    vals = arr.reshape(-1).astype('<i8' if kind == 1 else '<f8')
    return rec + bytes([kind, count]) + vals.tobytes()


def recipe(path):
    out = []
    with h5py.File(path, 'r') as f:
        objects = [('/', f)]
        f.visititems(lambda n, o: objects.append(('/' + n, o)))
        for name, obj in objects:
            if isinstance(obj, h5py.Dataset):
                r = dataset(name[1:], obj)
                if r:
                    out.append(r)
        for name, obj in objects:
            for key in obj.attrs:
                r = attribute(name, key, obj.attrs[key], obj.attrs.get_id(key))
                if r:
                    out.append(r)
    return b''.join(out)


if __name__ == '__main__':
    with open(sys.argv[2], 'wb') as fh:
        fh.write(recipe(sys.argv[1]))
