-- ~1 GiB in an in-memory database with 64 KiB pages, then queries over all of it (krak run tests and run_bench).
PRAGMA page_size = 65536;
CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000000)
  INSERT INTO t SELECT x, (x * 2654435761) % 1000003, printf('%0900d', x * 7) FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(length(v)), sum(k) FROM t;
SELECT id, k, substr(v, 890) FROM t WHERE k BETWEEN 5000 AND 5100 ORDER BY k, id;
SELECT k % 97, count(*), max(id) FROM t GROUP BY k % 97 ORDER BY 1 LIMIT 10;
