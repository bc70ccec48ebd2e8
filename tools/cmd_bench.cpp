// cmd_bench.cpp — to be written
