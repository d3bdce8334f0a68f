#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (corpus/<target>/seed-*).

Each seed is a selector byte and a message encoded by protoc from the text
below: valid requests and records, and edge cases (limits, bad UTF-8, deep
nesting, huge repeated fields). Run from anywhere; needs protoc. libFuzzer
adds what it finds to a scratch directory, never to these.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTO = os.path.join(ROOT, "proto")


def encode(msg_type, text, proto_file):
    return subprocess.run(
        ["protoc", "-I", PROTO, "-I", ROOT, "-I", "/usr/include",
         "--encode=" + msg_type, proto_file],
        input=text.encode(), stdout=subprocess.PIPE, check=True, cwd=ROOT).stdout


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


# --- requests: selector byte (see requests_fuzz.cc) + request bytes.
J = "errand/v1/jobs.proto"
W = "errand/v1/workers.proto"
E = "errand/v1/events.proto"
A = "errand/v1/admin.proto"
requests = [
    (0, "enqueue", "errand.v1.EnqueueRequest", J,
     'queue: "emails" payload: "hello" headers { key: "k" value: "v" } priority: 3 '
     'delay { seconds: 5 } max_attempts: 3 lease_duration { seconds: 30 } '
     'idempotency_key: "abc" concurrency_key: "user-1" durability: DURABILITY_ASYNC '
     'retry { initial_backoff { seconds: 1 } max_backoff { seconds: 60 } multiplier: 2 jitter: 0.2 }'),
    (0, "enqueue-run-at", "errand.v1.EnqueueRequest", J,
     'queue: "q" run_at { seconds: 1800000100 nanos: 5 }'),
    (0, "enqueue-bad-duration", "errand.v1.EnqueueRequest", J,
     'queue: "q" delay { seconds: -1 nanos: 5 } lease_duration { seconds: 315576000001 }'),
    (0, "enqueue-bad-name", "errand.v1.EnqueueRequest", J, 'queue: "a b"'),
    (1, "batch", "errand.v1.EnqueueBatchRequest", J,
     'jobs { queue: "a" } jobs { queue: "b" payload: "x" } durability: DURABILITY_SYNC'),
    (2, "stream", "errand.v1.EnqueueStreamRequest", J,
     'request_id: 1 job { queue: "a" } more { request_id: 2 job { queue: "b" } }'),
    (3, "get", "errand.v1.GetJobRequest", J, 'job_id: "01a2280a310d0000"'),
    (4, "wait", "errand.v1.WaitJobRequest", J, 'job_id: "01a2280a310d0000" timeout { seconds: 30 }'),
    (5, "cancel", "errand.v1.CancelJobRequest", J, 'job_id: "00000000000000ff" reason: "no"'),
    (6, "list", "errand.v1.ListJobsRequest", J,
     'queue: "q" state: JOB_STATE_READY page_size: 10 page_token: "0000000000000010"'),
    (7, "lease", "errand.v1.LeaseRequest", W,
     'queues: "a" queues: "b" max_jobs: 10 wait { seconds: 5 } lease_duration { seconds: 30 } worker_id: "w"'),
    (8, "connect-hello", "errand.v1.ConnectRequest", W,
     'hello { queues: "a" worker_id: "w" credits: 4 lease_duration { seconds: 10 } }'),
    (8, "connect-complete", "errand.v1.ConnectRequest", W,
     'complete { job_id: "0000000000000001" lease_token: 7 result: "ok" }'),
    (9, "complete", "errand.v1.CompleteRequest", W,
     'job_id: "0000000000000001" lease_token: 4294967297 result: "done"'),
    (10, "fail", "errand.v1.FailRequest", W,
     'job_id: "0000000000000001" lease_token: 1 error: "boom" retry_after { seconds: 3 }'),
    (11, "extend", "errand.v1.ExtendRequest", W,
     'job_id: "0000000000000001" lease_token: 1 extend_by { seconds: 60 } progress { fraction: 0.5 message: "half" }'),
    (12, "subscribe", "errand.v1.SubscribeRequest", E,
     'queues: "a" topics: "t" job_ids: "0000000000000001" types: EVENT_TYPE_SUCCEEDED after_seq: 10'),
    (13, "publish", "errand.v1.PublishRequest", E,
     'topic: "news" payload: "hi" headers { key: "a" value: "b" }'),
    (14, "redrive", "errand.v1.RedriveJobsRequest", A, 'queue: "q" job_ids: "0000000000000002"'),
    (15, "pause", "errand.v1.PauseQueueRequest", A, 'queue: "q"'),
]
for sel, name, typ, f, text in requests:
    write("requests", name, bytes([sel]) + encode(typ, text, f))
# Hostile shapes, built by hand.
write("requests", "bad-utf8-queue", bytes([0]) + ld(1, b"q\xff\xfe"))
write("requests", "bad-utf8-raw", b"\x0f\xc3\x28\xa0\xa1")
deep = b""
for _ in range(200):  # EnqueueStreamRequest.more nested 200 deep
    deep = ld(3, deep)
write("requests", "deep-nesting", bytes([2]) + deep)
write("requests", "many-tiny-jobs", bytes([1]) + ld(1, b"") * 2000)
write("requests", "truncated", bytes([0]) + b"\x0a\x10emai")
write("requests", "huge-length", bytes([0]) + b"\x0a\xff\xff\xff\xff\x0f")
write("requests", "headers-over-limit", bytes([0]) + ld(1, b"q") + ld(5, ld(1, b"k") + ld(2, b"v" * 300)))

# --- records: selector, key length, key, value.
R = "broker/store/records.proto"


def record(sel, key, value):
    return bytes([sel, len(key)]) + key + value


job_key = (0x0123456789abcdef).to_bytes(8, "big")
job = encode("errand.store.JobRecord",
             'job { id: "0123456789abcdef" queue: "emails" state: JOB_STATE_LEASED payload: "p" '
             'attempts: 1 max_attempts: 5 created_at { seconds: 1800000000 } '
             'run_at { seconds: 1800000000 } lease_duration { seconds: 30 } '
             'history { worker_id: "w" started_at { seconds: 1800000001 } } } lease_token: 4294967297', R)
write("records", "job", record(0, job_key, job))
write("records", "job-bad-state", record(0, job_key, encode(
    "errand.store.JobRecord", 'job { id: "0123456789abcdef" queue: "q" state: 99 }', R)))
write("records", "job-wrong-id", record(0, job_key, encode(
    "errand.store.JobRecord", 'job { id: "0000000000000001" queue: "q" state: JOB_STATE_READY }', R)))
write("records", "job-far-time", record(0, job_key, encode(
    "errand.store.JobRecord",
    'job { id: "0123456789abcdef" queue: "q" state: JOB_STATE_READY run_at { seconds: 9223372036854775807 } }', R)))
write("records", "job-short-key", record(0, b"\x01\x02", job))
write("records", "meta", record(1, b"", encode(
    "errand.store.MetaRecord", "format_version: 1 boot_epoch: 42", R)))
write("records", "queue", record(2, b"queue/emails", encode(
    "errand.store.QueueRecord", 'name: "emails" paused: true max_leased_per_key: 2', R)))
write("records", "queue-mismatch", record(2, b"queue/emails", encode(
    "errand.store.QueueRecord", 'name: "other"', R)))
seq_key = (77).to_bytes(8, "big")
write("records", "event", record(3, seq_key, encode(
    "errand.v1.Event",
    'seq: 77 type: EVENT_TYPE_SUCCEEDED time { seconds: 1800000000 } job_id: "0123456789abcdef" queue: "q"',
    "errand/v1/job.proto")))
write("records", "event-wrong-seq", record(3, seq_key, encode(
    "errand.v1.Event", "seq: 78 type: EVENT_TYPE_MESSAGE", "errand/v1/job.proto")))
write("records", "garbage", record(0, job_key, b"\xff\xff\xff\xff"))
print("seeds written", file=sys.stderr)
