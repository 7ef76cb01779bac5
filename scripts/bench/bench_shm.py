# bench_shm.py — the workloads of bench_shm.lua on CPython's multiprocessing, same output rows
# ("name<TAB>value<TAB>unit") so the two can be compared side by side. CPython's Pipe() is a
# socketpair, Pipe(False) an os.pipe; lmp uses a socketpair for both (descriptors can travel).
import multiprocessing as mp
import time


def row(name, value, unit):
    print("%s\t%.6g\t%s" % (name, value, unit), flush=True)


def producer(q, n):
    for i in range(1, n + 1):
        q.put(i)


def bench_queue(n):
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, n))
    t0 = time.monotonic()
    p.start()
    for _ in range(n):
        q.get()
    dt = time.monotonic() - t0
    p.join()
    row("queue_small_items", n / dt, "msgs/s")


def counter(lock, v, n):
    for _ in range(n):
        lock.acquire()
        v.value += 1
        lock.release()


def bench_lock(n):
    lock = mp.Lock()
    v = mp.Value("q", 0, lock=False)
    t0 = time.monotonic()
    ps = [mp.Process(target=counter, args=(lock, v, n)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.monotonic() - t0
    assert v.value == 2 * n
    row("lock_counter_2proc", 2 * n / dt, "ops/s")


def sender(b, n, size):
    s = b"x" * size
    for _ in range(n):
        b.send_bytes(s)


def bench_pipe(name, n, size, duplex):
    a, b = mp.Pipe(duplex)
    p = mp.Process(target=sender, args=(b, n, size))
    t0 = time.monotonic()
    p.start()
    b.close()
    for _ in range(n):
        a.recv_bytes()
    dt = time.monotonic() - t0
    p.join()
    a.close()
    if size >= 1 << 20:
        row(name, n * size / dt / 1e9, "GB/s")
    else:
        row(name, n / dt, "msgs/s")


if __name__ == "__main__":
    mp.set_start_method("fork")
    bench_queue(200000)
    bench_lock(300000)
    bench_pipe("pipe_1MiB", 2000, 1 << 20, True)
    bench_pipe("pipe_16B", 500000, 16, True)
    bench_pipe("pipe_oneway_1MiB", 2000, 1 << 20, False)
    bench_pipe("pipe_oneway_16B", 500000, 16, False)
