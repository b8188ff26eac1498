// A V8 heap of 3 million small objects beside a 512 MiB Buffer (tests/run.rs): prints the
// Buffer's SHA-256, a checksum over the objects and their count.
const crypto = require('crypto');
const buf = Buffer.alloc(512 << 20);
for (let i = 0; i < buf.length; i += 4096) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
const objs = [];
for (let i = 0; i < 3e6; i++) objs.push({ i, s: 'v' + i, t: [i & 7, i >> 3] });
let h = crypto.createHash('sha256');
h.update(buf);
let sum = 0;
for (const o of objs) sum = (sum * 31 + o.i + o.s.length + o.t[1]) % 1000000007;
console.log(h.digest('hex'), sum, objs.length);
