"""CPython multiprocessing side of lmp's benchmark (scripts/bench/bench.lua runs it).

One workload per invocation; prints one line: "<row> <figure> <unit> [key=value ...]".
    python3 bench_cpython.py map
Start method fork, 2 workers, module-level task functions: the same setup as the lmp side.
"""
import gc
import multiprocessing as mp
import os
import sys
import time

WORKERS = 2


def square(x):
    return x * x


def ident(x):
    return x


def nothing():
    return None


def spin(n):
    s = 0
    for i in range(n):
        s += i % 7
    return s


def row_map():
    data = range(1_000_000)
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        t0 = time.perf_counter()
        res = pool.map(square, data)
        dt = time.perf_counter() - t0
    assert len(res) == 1_000_000 and res[-1] == 999_999 ** 2
    return "%.1f tasks/s" % (len(res) / dt)


def row_apply():
    n = 5000
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        t0 = time.perf_counter()
        for i in range(n):
            assert pool.apply_async(ident, (i,)).get(60) == i
        dt = time.perf_counter() - t0
    return "%.3f us/rt" % (dt / n * 1e6)


def row_apply_many():
    n = 100_000
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        t0 = time.perf_counter()
        results = [pool.apply_async(ident, (i,)) for i in range(n)]
        total = 0
        for r in results:
            total += r.get(120)
        dt = time.perf_counter() - t0
    assert total == n * (n - 1) // 2
    return "%.1f tasks/s" % (n / dt)


def row_imap_unordered():
    n = 200_000
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        t0 = time.perf_counter()
        count = 0
        for _ in pool.imap_unordered(square, range(n), chunksize=1):
            count += 1
        dt = time.perf_counter() - t0
    assert count == n
    return "%.1f tasks/s" % (n / dt)


def row_startstop():
    k = 5
    t0 = time.perf_counter()
    for _ in range(k):
        with mp.Pool(WORKERS) as pool:
            pool.apply(nothing, ())
    dt = time.perf_counter() - t0
    return "%.3f ms" % (dt / k * 1e3)


def calibrate(target):
    """Iterations of spin() that take about target seconds here."""
    n = 100_000
    while True:
        t0 = time.perf_counter()
        spin(n)
        dt = time.perf_counter() - t0
        if dt > 0.05:
            return max(1, int(n * target / dt))
        n *= 2


def row_cpu():
    tasks = 8
    n = calibrate(0.25)
    t0 = time.perf_counter()
    serial = [spin(n) for _ in range(tasks)]
    t_serial = time.perf_counter() - t0
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        t0 = time.perf_counter()
        par = pool.map(spin, [n] * tasks, chunksize=1)
        t_pool = time.perf_counter() - t0
    assert par == serial
    return "%.3f x serial=%.3fs pool=%.3fs" % (t_serial / t_pool, t_serial, t_pool)


def private_kib(pid):
    total = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def row_mem():
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        time.sleep(0.2)
        sizes = [private_kib(p.pid) for p in pool._pool]
    return "%.3f MiB workers_kib=%s" % (max(sizes) / 1024, ",".join(map(str, sizes)))


def producer(q, n):
    for i in range(n):
        q.put(i)


def row_queue():
    n = 200_000
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, n))
    t0 = time.perf_counter()
    p.start()
    for _ in range(n):
        q.get(timeout=60)
    dt = time.perf_counter() - t0
    p.join()
    return "%.1f msgs/s" % (n / dt)


def sender(b, n, size):
    s = b"x" * size
    for _ in range(n):
        b.send_bytes(s)


def pipe_rate(n, size):
    a, b = mp.Pipe()
    p = mp.Process(target=sender, args=(b, n, size))
    t0 = time.perf_counter()
    p.start()
    b.close()
    for _ in range(n):
        a.recv_bytes()
    dt = time.perf_counter() - t0
    p.join()
    a.close()
    return dt


def row_pipe_1mib():
    n, size = 2000, 1 << 20
    return "%.4f GB/s" % (n * size / pipe_rate(n, size) / 1e9)


def row_pipe_16b():
    n = 500_000
    return "%.1f msgs/s" % (n / pipe_rate(n, 16))


def counter(lock, v, n):
    for _ in range(n):
        lock.acquire()
        v.value += 1
        lock.release()


def row_lock():
    n = 300_000
    lock = mp.Lock()
    v = mp.Value("q", 0, lock=False)
    ps = [mp.Process(target=counter, args=(lock, v, n)) for _ in range(2)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t0
    assert v.value == 2 * n
    return "%.1f ops/s" % (2 * n / dt)


def row_manager_dict():
    n = 20_000
    with mp.Manager() as m:
        d = m.dict()
        d["k"] = 0
        t0 = time.perf_counter()
        for i in range(n):
            d["k"] = i
            assert d["k"] == i
        dt = time.perf_counter() - t0
    return "%.1f pairs/s us_per_call=%.1f" % (n / dt, dt / (2 * n) * 1e6)
# ---- data: pickle (protocol 5), the twin of bench.lua's codec rows ----

CODEC_REPS = 7


def codec_records():
    return [{"id": i, "name": "user%d" % i, "score": i * 0.5, "tags": ["a", "b", "c"]}
            for i in range(1, 100_001)], 100_000


def codec_tree():
    nodes = [{"v": i} for i in range(100_000)]
    for i, node in enumerate(nodes):
        if 2 * i + 1 < len(nodes):
            node["l"] = nodes[2 * i + 1]
        if 2 * i + 2 < len(nodes):
            node["r"] = nodes[2 * i + 2]
    return nodes[0], 100_000


def codec_floats():
    return [i * 0.5 for i in range(1, 1_000_001)], 1_000_000


def codec_string():
    return b"x" * (10 * 1024 * 1024), 10 * 1024 * 1024


CODEC_DATA = {"records": codec_records, "tree": codec_tree, "floats": codec_floats,
              "string": codec_string}


def codec_rate(case, op, unit):
    """Items per second of pickle.dumps ("enc") or pickle.loads ("dec"): best of CODEC_REPS,
    a full collection before each (the collector runs as it normally does while timed)."""
    import gc
    import pickle
    v, items = CODEC_DATA[case]()
    m = pickle.dumps(v, protocol=5)
    best = float("inf")
    for _ in range(CODEC_REPS):
        gc.collect()
        t0 = time.perf_counter()
        x = pickle.dumps(v, protocol=5) if op == "enc" else pickle.loads(m)
        best = min(best, time.perf_counter() - t0)
        del x
    return "%.1f %s size=%d" % (items / best, unit, len(m))


def codec_size(case):
    import pickle
    return "%d bytes" % len(pickle.dumps(CODEC_DATA[case]()[0], protocol=5))


# ---- data: pool rows over real data, the twins of bench.lua's ----

def mem_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no " + field)


def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def row_map_1e7():
    n = 10_000_000
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        data = range(n)
        base = mem_kib("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        res = pool.map(square, data)
        dt = time.perf_counter() - t0
        peak = mem_kib("VmHWM") - base
    assert len(res) == n and res[-1] == (n - 1) ** 2
    return "%.1f tasks/s peak_B_per_item=%.1f" % (n / dt, peak * 1024 / n)


def record(r):
    return {"id": r["id"], "total": r["score"] * len(r["tags"])}


def row_map_records():
    n = 200_000
    data = [{"id": i, "name": "user%d" % i, "score": i * 0.5, "tags": ["a", "b", "c"]}
            for i in range(1, n + 1)]
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        gc.collect()  # as the lmp side: the clock times the map
        t0 = time.perf_counter()
        res = pool.map(record, data)
        dt = time.perf_counter() - t0
    assert len(res) == n and res[-1]["total"] == n * 0.5 * 3
    return "%.1f records/s" % (n / dt)


CAPTURED = None


def use_captured(i):
    return len(CAPTURED) + i


def row_apply_captured():
    global CAPTURED
    CAPTURED = ["%08d-payload" % i for i in range(1, 50_001)]  # about 1 MB pickled
    n = 300
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        t0 = time.perf_counter()
        rs = [pool.apply_async(use_captured, (i,)) for i in range(n)]
        total = sum(r.get(60) for r in rs)
        dt = time.perf_counter() - t0
    assert total == n * 50_000 + n * (n - 1) // 2
    return "%.2f us/task" % (dt / n * 1e6)


BIG = 50 * 1024 * 1024


def make_big(n):
    return b"y" * n


def row_big_arg():
    import gc
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        s = b"x" * BIG
        base = mem_kib("VmRSS")
        reset_peak()
        assert pool.apply(len, (s,)) == BIG
        peak = mem_kib("VmHWM") - base
        gc.collect()
        kept = mem_kib("VmRSS") - base
    return "%.3f x_payload peak_MiB=%.1f kept_MiB=%.1f" % (peak * 1024 / BIG, peak / 1024,
                                                          kept / 1024)


def row_big_result():
    import gc
    with mp.Pool(WORKERS) as pool:
        pool.apply(nothing, ())
        base = mem_kib("VmRSS")
        reset_peak()
        r = pool.apply(make_big, (BIG,))
        assert len(r) == BIG
        peak = mem_kib("VmHWM") - base
        del r
        gc.collect()
        kept = mem_kib("VmRSS") - base
    return "%.3f x_payload peak_MiB=%.1f kept_MiB=%.1f" % (peak * 1024 / BIG, peak / 1024,
                                                          kept / 1024)


CODEC_ROWS = {}
for _case, _unit in (("records", "records/s"), ("tree", "tables/s"), ("floats", "floats/s"),
                     ("string", "bytes/s")):
    for _op in ("enc", "dec"):
        CODEC_ROWS["%s_%s" % (_op, _case)] = (lambda c=_case, o=_op, u=_unit: codec_rate(c, o, u))
    CODEC_ROWS["size_" + _case] = lambda c=_case: codec_size(c)


ROWS = {
    "queue": row_queue,
    "pipe_1mib": row_pipe_1mib,
    "pipe_16b": row_pipe_16b,
    "lock": row_lock,
    "map": row_map,
    "apply": row_apply,
    "apply_many": row_apply_many,
    "imap_unordered": row_imap_unordered,
    "startstop": row_startstop,
    "cpu": row_cpu,
    "mem": row_mem,
    "manager_dict": row_manager_dict,
    "map_1e7": row_map_1e7,
    "map_records": row_map_records,
    "apply_captured": row_apply_captured,
    "big_arg": row_big_arg,
    "big_result": row_big_result,
    **CODEC_ROWS,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ROWS:
        sys.stderr.write("usage: bench_cpython.py {%s}\n" % "|".join(ROWS))
        return 2
    mp.set_start_method("fork")
    name = sys.argv[1]
    print(name, ROWS[name](), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
