module example.com/tollgate-example

go 1.19
