# Run under `krak run --pager separate`: talks to the pager process's socket as a broken or
# hostile program would, and checks that every bad message is refused with a reason (and
# the pager keeps serving); then uses far memory itself and checks its contents.
import os
import socket
import struct

path = os.environ["KRAK_RUN_PAGER_SOCKET"]
FAILED = 0x83


def ask(payload, fds=()):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    if fds:
        socket.send_fds(s, [payload], list(fds))
    else:
        s.send(payload)
    answer = s.recv(1 << 16)
    s.close()
    return answer


def hello(version=1, base=1 << 40, length=1 << 20, features=0x1101, mode=0):
    return struct.pack("<BHQQQB", 1, version, base, length, features, mode)


memfd = os.memfd_create("not-an-arena")
os.ftruncate(memfd, 1 << 20)
other = os.open("/proc/self/stat", os.O_RDONLY)
cases = [
    ("unknown tag", b"\x09", ()),
    ("empty hello", b"\x01", ()),
    ("discard before hello", b"\x02" + bytes(16), ()),
    ("hello without fds", hello(), ()),
    ("wrong version", hello(version=99), (memfd, memfd)),
    ("a file for the memfd", hello(), (other, memfd)),
    ("a memfd for the userfaultfd", hello(), (memfd, memfd)),
    ("arena larger than the memfd", hello(length=2 << 20), (memfd, memfd)),
    ("unaligned arena", hello(base=(1 << 40) + 1), (memfd, memfd)),
    ("arena larger than --max-far", hello(length=1 << 50), (memfd, memfd)),
]
for name, payload, fds in cases:
    answer = ask(payload, fds)
    assert answer[:1] == bytes([FAILED]), (name, answer)
    print(f"{name}: refused: {answer[1:].decode()}")

# The pager still serves this program's own arena: 64 MiB, every page checked.
b = bytearray(64 << 20)
for i in range(0, len(b), 4096):
    b[i] = (i // 4096) % 251
assert all(b[i] == (i // 4096) % 251 for i in range(0, len(b), 4096))
print("still served")
