"""`streamer topics create|describe`: the input, output, dead-letter and changelog topics of a deployment.

Takes the same topic, group and connection flags as `streamer serve` (and the same STREAMER_* variables),
so `streamer topics create --partitions 6` prepares exactly the topics a later `streamer serve` uses.
"""

from __future__ import annotations


from streamer.commands._options import int_at_least as _int_at_least

PROG = "streamer topics"


def register(subparsers) -> None:
    from streamer.cli import env_default
    from streamer.kafka.config import add_client_option, add_connection_options, add_topic_options

    p = subparsers.add_parser(
        "topics",
        help="create or describe the Kafka topics `streamer serve` uses",
        description="Create (or describe) the input, output, dead-letter and changelog topics of one deployment. "
                    "The changelog (default <group-id>-<input-topic>-changelog) is compacted and always has the "
                    "input topic's partition count. Existing topics are left alone; an existing changelog whose "
                    "partition count differs from the input topic's is an error.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    create = sub.add_parser("create", help="create the topics that are missing",
                            description="Create the missing topics (replication factor: the broker's default "
                                        "unless --replication-factor) and check the existing ones.")
    describe = sub.add_parser("describe", help="show the topics' partition counts",
                              description="Print each topic's partition count (or 'missing').")
    for q in (create, describe):
        add_connection_options(q)
        add_client_option(q)
        add_topic_options(q)
    create.add_argument("--partitions", type=_int_at_least(1), metavar="N",
                        default=env_default("partitions", None, _int_at_least(1)),
                        help="partitions of the created topics (default: the input topic's when it exists, else 1); "
                             "the changelog always gets the input topic's count [STREAMER_PARTITIONS]")
    create.add_argument("--replication-factor", type=_int_at_least(-1), metavar="N",
                        default=env_default("replication_factor", -1, _int_at_least(-1)),
                        help="default -1: the broker's default.replication.factor [STREAMER_REPLICATION_FACTOR]")
    p.set_defaults(func=run)


def run(args) -> int:
    from streamer.errors import UserError
    from streamer.kafka import topics as topic_admin
    from streamer.kafka.client import ClientError, make_clients
    from streamer.kafka.config import ClientTuning, connection_from_args, topics_from_args

    conn = connection_from_args(args)
    topics = topics_from_args(args)
    try:
        admin = make_clients(args.kafka_client, conn, ClientTuning(group_id=args.group_id), topics.input).admin()
        admin.partition_counts([topics.input])  # reach the brokers now: a clear message if they do not answer
    except ClientError as exc:
        raise UserError(f"cannot reach Kafka at {args.bootstrap_servers} ({exc}); is the broker up and "
                        "--bootstrap-servers right?") from None
    try:
        if args.action == "create":
            before = topic_admin.describe(admin, topics.all())
            counts = topic_admin.ensure(admin, topics, create=True, partitions=args.partitions,
                                        replication_factor=args.replication_factor)
            for name in topics.all():
                state = "exists" if before[name] is not None else "created"
                print(f"{name}\t{counts[name]} partitions\t{state}")
        else:
            counts = topic_admin.describe(admin, topics.all())
            for name in topics.all():
                print(f"{name}\t" + ("missing" if counts[name] is None else f"{counts[name]} partitions"))
            topic_admin.check_changelog(counts, topics)
    except ClientError as exc:
        raise UserError(f"Kafka refused: {exc}") from None
    finally:
        admin.close()
    return 0
