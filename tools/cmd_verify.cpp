// cmd_verify.cpp — to be written
