"""`python -m fastq` is the `fastq` command."""

from fastq.cli import main

if __name__ == '__main__':
    main()
