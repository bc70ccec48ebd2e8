// cmd_demo.cpp — to be written
