"""The model files here are MLX programs that the port tests read as text and execute (under MLX
as written, and under convnn after renaming the imports); they are not collected themselves."""

collect_ignore_glob = ["*_mlx.py"]
