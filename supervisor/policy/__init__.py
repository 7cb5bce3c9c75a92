"""The policy wing: what a command may do, decided without the kernel.

``profile`` resolves profiles, the security list and command-line grants into one ``Policy``;
``access`` answers "may this op reach this path" on it (the checker's and the report's index);
``grants`` is the user's stored answers (grants.toml); ``agents`` what each agent needs for itself;
``netpolicy`` domain and address patterns; ``gitrepos`` the repositories whose files run later.
Pure of the kernel: backends compile a ``Policy`` into their own plan.
"""
