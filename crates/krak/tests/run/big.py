# About 1 GiB of Python objects: a bytearray and a list of distinct ints, filled from a
# fixed seed, then a checksum over both (the test compares it with a plain run's).
import hashlib
import sys

array_mib, list_len = int(sys.argv[1]), int(sys.argv[2])
b = bytearray(array_mib << 20)
for i in range(0, len(b), 1 << 20):
    b[i:i + (1 << 20)] = hashlib.sha256(i.to_bytes(8, "little")).digest() * (1 << 15)
l = [i * 2654435761 + 1000 for i in range(list_len)]
h = hashlib.sha256(b)
h.update(str(sum(l[::7])).encode())
h.update(bytes(b[::4099]))
print(len(b), len(l), h.hexdigest())
