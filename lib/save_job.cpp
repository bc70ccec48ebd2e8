// save_job.cpp — to be written
