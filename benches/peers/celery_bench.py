"""The Celery side of `compare`'s row 1: a no-op task with the semantics the worker has.

- `task_acks_late`: the job is acked after the task ran and its result was stored, not on receipt;
- the result goes back through the `rpc://` backend (to the `reply_to` queue the job names), persistent,
  with publisher confirms (`confirm_publish`): the ack follows a confirmed result, as the worker's follows
  a confirmed outcome event.

The harness publishes the jobs itself (Celery's message protocol 2, 1 KB of arguments each) and starts
`celery -A celery_bench worker` with the pool under test; the environment names the broker, the queue and
the prefetch multiplier.
"""

import os

from celery import Celery

app = Celery("celery_bench", broker=os.environ["BENCH_BROKER"], backend="rpc://")
app.conf.update(
    task_acks_late=True,
    task_default_queue=os.environ["BENCH_QUEUE"],
    result_persistent=True,
    broker_transport_options={"confirm_publish": True},
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH_MULTIPLIER", "4")),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")
def noop(payload):
    return None
