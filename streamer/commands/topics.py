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
        help="create or describe the Kafka topics `streamer serve` uses, and print or apply its ACLs",
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
    acl = sub.add_parser("acls", help="print (or --apply) the ACLs that let a principal run serve",
                         description="Print the kafka-acls.sh lines that grant --principal what `streamer serve` "
                                     "needs on these topics and group (least privilege: nothing on the cluster), "
                                     "and with --producer-principal what `streamer produce` needs on the input "
                                     "topic. Nothing is sent to the broker unless --apply: then they are created "
                                     "(connected as a user allowed to, e.g. an admin).")
    for q in (create, describe):
        add_connection_options(q)
        add_client_option(q)
        add_topic_options(q)
    add_connection_options(acl, required=False)
    add_topic_options(acl)
    acl.add_argument("--apply", action="store_true", help="create the ACLs on the broker instead of printing them")
    acl.add_argument("--principal", default="User:" + (env_default("sasl_username", None) or "streamer"),
                     help="the principal serve authenticates as (default User:$STREAMER_SASL_USERNAME, else "
                          "User:streamer)")
    acl.add_argument("--producer-principal", metavar="PRINCIPAL", help="also the lines for a producer of events")
    acl.add_argument("--exactly-once", action="store_true", help="also its transactional id (prefix)")
    acl.add_argument("--transactional-id", metavar="ID", help="--exactly-once with this id (default: the prefix "
                                                                "of the default ids, streamer-<group>-<input>-)")
    acl.add_argument("--create-topics", action="store_true", help="also Create on the topics (serve --create-topics)")
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
    from streamer.kafka import acls, failures
    from streamer.kafka import topics as topic_admin
    from streamer.kafka.client import ClientError, make_clients
    from streamer.kafka.config import ClientTuning, connection_from_args, topics_from_args

    topics = topics_from_args(args)
    if args.action == "acls":
        return _acls(args, topics)
    conn = connection_from_args(args)
    needs = acls.topics_create_needs(topics)
    try:
        admin = make_clients(args.kafka_client, conn, ClientTuning(group_id=args.group_id), topics.input,
                             needs=needs).admin()
        admin.partition_counts([topics.input])  # reach the brokers now: a clear message if they do not answer
    except ClientError as exc:
        raise UserError(failures.explain(exc, conn, needs)
                        or f"cannot reach Kafka at {args.bootstrap_servers} ({exc}); is the broker up and "
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
        raise UserError(failures.explain(exc, conn, needs, probe=False) or f"Kafka refused: {exc}") from None
    finally:
        admin.close()
    return 0


def _acls(args, topics) -> int:
    """Print the ACLs of serve's principal (and a producer's), or create them with --apply."""
    from kafka.errors import KafkaError

    from streamer.errors import UserError
    from streamer.kafka import acls, failures
    from streamer.kafka.config import ClientTuning, connection_from_args

    grants = [(args.principal, acls.serve_needs(topics, args.group_id, exactly_once=args.exactly_once,
                                                transactional_id=args.transactional_id,
                                                create_topics=args.create_topics))]
    if args.producer_principal:
        grants.append((args.producer_principal, acls.producer_needs(topics.input)))
    if not args.apply:
        for principal, needs in grants:
            for need in needs:
                print(need.kafka_acls(principal, args.bootstrap_servers or "BROKER:PORT"))
        return 0
    if not args.bootstrap_servers:
        raise UserError("--apply needs --bootstrap-servers (or STREAMER_BOOTSTRAP_SERVERS)")
    conn = connection_from_args(args)
    try:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**ClientTuning(group_id=args.group_id).admin_kwargs(conn))
        try:
            for principal, needs in grants:
                result = admin.create_acls(acls.kafka_python_acls(principal, needs))
                if result["failed"]:
                    error = result["failed"][0]
                    raise UserError(f"the broker refused to create the ACLs for {principal} "
                                    f"({getattr(error, '__name__', error)}); --apply as a user allowed to Alter "
                                    f"the cluster (an admin), or have one run the lines `streamer topics acls` "
                                    "prints")
                for need in needs:
                    print(f"granted {principal}: {', '.join(need.operations)} on {need.resource} {need.name}"
                          + (" (prefix)" if need.prefixed else ""))
        finally:
            admin.close()
    except KafkaError as exc:
        raise UserError(failures.explain(exc, conn) or f"Kafka refused: {type(exc).__name__}: {exc}") from None
    return 0
