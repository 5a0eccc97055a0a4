import threading

queue_lock = threading.Lock()  # A1111: a FIFOLock, used the same way (with-statement)
