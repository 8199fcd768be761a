"""JetStream with the least grants and no response permission (docs/CLIENT_USAGE.md, "JetStream"):
one role per run, each connecting with the pod's service-account token.

    NATS_URL=nats://nats.nats.svc.cluster.local:4222 NATS_TOKEN_FILE=/var/run/secrets/nats/token \
    NATS_NAMESPACE=shop python jetstream.py publish|consume|kv|delete-stream

`setup` creates the stream ORDERS (`<namespace>.orders.>`), its pull consumer `worker` and the
key-value bucket `config`; it logs in as an administrator (NATS_USER / NATS_PASSWORD), as a
platform team would, instead of with a token.
"""

import asyncio
import os
import sys

import nats
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig

URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
NAMESPACE = os.environ.get("NATS_NAMESPACE", "shop")
STREAM, CONSUMER, BUCKET = "ORDERS", "worker", "config"


def read_token() -> str:
    # Read at every CONNECT: the kubelet rotates the file.
    with open(os.environ["NATS_TOKEN_FILE"], encoding="utf-8") as f:
        return f.read().strip()


async def main(role: str) -> int:
    errors = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    if role == "setup":
        nc = await nats.connect(
            URL, user=os.environ["NATS_USER"], password=os.environ["NATS_PASSWORD"]
        )
    else:
        nc = await nats.connect(URL, token=read_token, error_cb=on_error, allow_reconnect=False)
    js = nc.jetstream(timeout=5)
    try:
        if role == "setup":
            await js.add_stream(name=STREAM, subjects=[f"{NAMESPACE}.orders.>"])
            await js.add_consumer(
                STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT)
            )
            await js.create_key_value(KeyValueConfig(bucket=BUCKET, direct=True))
            print("ready")
        elif role == "publish":
            # A plain publish to the stream's subject; the acknowledgement comes to an inbox.
            ack = await js.publish(f"{NAMESPACE}.orders.new", b"order-1")
            print(f"published {ack.stream} {ack.seq}")
        elif role == "consume":
            # Bound to the existing consumer by name: no consumer lookup or creation.
            sub = await js.pull_subscribe_bind(CONSUMER, stream=STREAM)
            for msg in await sub.fetch(1, timeout=5):
                await msg.ack_sync()
                print(f"consumed {msg.data.decode()} acked")
        elif role == "kv":
            kv = await js.key_value(BUCKET)
            await kv.put("feature.x", b"on")
            entry = await kv.get("feature.x")
            print(f"kv {entry.key}={entry.value.decode()}")
        elif role == "delete-stream":
            await js.delete_stream(STREAM)
            print("deleted")
        else:
            print(f"unknown role {role}", file=sys.stderr)
            return 2
    except Exception as e:  # the test reads what failed, and how
        await asyncio.sleep(0.5)
        print(f"failed: {type(e).__name__}: {'; '.join(errors) or e}")
        return 1
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
