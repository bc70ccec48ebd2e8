// cmd_inspect.cpp — to be written
