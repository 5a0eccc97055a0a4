data_path = ""
models_path = ""
script_path = ""
