module zervigo/auth

go 1.21
