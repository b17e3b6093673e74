module example/seamless

go 1.19
