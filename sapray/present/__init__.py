"""What a person sees: the console (stage and progress lines, the quiet session with run.log), text
tables, and the self-contained HTML report."""
