"""``ms-gpt2 download-data``: the tutorial's NLPCC2017 file, resumable and checksummed (ms_gpt2.data.download)."""
from __future__ import annotations


def register(subparsers, common) -> None:
    p = subparsers.add_parser("download-data", parents=[common],
                              help="download the tutorial's NLPCC2017 file (resumable, checksummed)")
    p.add_argument("--url", default=None, help="default: the tutorial's NLPCC2017 URL")
    p.add_argument("--cache-dir", default="data/nlpcc2017")
    p.add_argument("--sha256", help="expected SHA-256 of the file")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ms_gpt2.data import download

    path = download.download(args.url or download.NLPCC2017_URL, args.cache_dir, sha256=args.sha256)
    print(path)
    return 0
