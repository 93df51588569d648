"""Django support beside the fixup (fastq.fixups.django): the task class Django projects get."""
