"""Every SQL query kbchat runs, one module per table group; functions take ``session`` as a keyword."""
