module roomcast/benches/loadgen

go 1.26
